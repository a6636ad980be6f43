"""The output directory: store, lock, attempt logs, report, export, gallery."""
