"""The API's routers, one module per resource (DESIGN.md section 6)."""
