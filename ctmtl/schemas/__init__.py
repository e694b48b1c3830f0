"""JSON schemas shipped with ctmtl."""
