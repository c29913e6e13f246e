"""Offline batch: `glmserve run-batch` (server/batch/__main__.py) runs an OpenAI batch file through the app."""
