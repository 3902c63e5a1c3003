"""SQL beyond the core tables in db.py, one module per room (all SQL lives in db.py and here)."""
