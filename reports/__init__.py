"""trainaudit.reports: an audit's findings as one self-contained HTML report, and the summaries
the flows publish as Prefect artifacts.

>>> from trainaudit.reports import write_report
>>> write_report(result, "audits/run-42")          # audits/run-42/report.html + audit.json

The report opens offline (no network, everything inline), stays under
:data:`MAX_REPORT_BYTES` whatever the run's length, and escapes every string that came from the
run. Importing this package loads neither Prefect, Dask nor the capture code. See
``docs/REPORT.md``.
"""

from ._artifacts import findings_table, markdown_summary
from ._html import MAX_REPORT_BYTES, render_html, write_report
from ._svg import PLOT_KINDS

__all__ = [
    "render_html",
    "write_report",
    "MAX_REPORT_BYTES",
    "markdown_summary",
    "findings_table",
    "PLOT_KINDS",
]
