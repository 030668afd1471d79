"""The commands people run between repros: review, the review app, trace, compare."""
