"""Reports: plotly figures and the self-contained HTML report."""
