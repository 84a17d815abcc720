"""Reporting: the result-row contract and its files, tables, the Pareto front and plots, a comparison's summary (the
interactive HTML report: `legr.reporting.html`, imported on its own as it loads altair)."""

from legr.reporting.comparison import comparison_markdown
from legr.reporting.plots import figure, pareto_front, plot_method_curves, plot_pareto, plot_widths, save_figure
from legr.reporting.rows import (
                                 BASELINE,
                                 BUSY_MACHINE,
                                 LATENCY_KEY,
                                 RESULTS_CSV,
                                 RESULTS_JSON,
                                 ResultRow,
                                 config_hash,
                                 is_baseline,
                                 latency_columns,
                                 latency_key,
                                 read_results,
                                 validate_rows,
                                 warn_if_noisy,
                                 write_results,
)
from legr.reporting.tables import format_table, markdown_table

__all__ = ["BASELINE", "BUSY_MACHINE", "LATENCY_KEY", "RESULTS_CSV", "RESULTS_JSON", "ResultRow", "comparison_markdown",
           "config_hash", "figure", "format_table", "is_baseline", "latency_columns", "latency_key", "markdown_table",
           "pareto_front", "plot_method_curves", "plot_pareto", "plot_widths", "read_results", "save_figure",
           "validate_rows", "warn_if_noisy", "write_results"]
