"""The worker: claims tasks from the database, processes images, stores results."""
