"""Plotly figures, one module per topic; each function takes arrays/dicts and returns a Figure."""
