"""Renderers: text, JSON, CSV, SARIF and figures. The only place matplotlib is imported."""
