"""Plots and visualisations (matplotlib, Agg backend)."""
