"""The local review app (``curate review --serve``): see :mod:`curate.people.review_app.server`."""
