"""The local review app (``curate review --serve``): see :mod:`curate.review_app.server`."""
