"""The frontend: a web page to upload an image, follow the job and download the result."""
