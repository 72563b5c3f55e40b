"""The worker: claims tasks from the master, processes images, stores results."""
