"""The on-disk data: pixel stores, sample tables, source folders, decoding, lineage, the review ledger."""
