"""The report stage: health scores, the JSON/HTML report and its template, the console summary and
insights, sparklines."""
