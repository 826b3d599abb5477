"""What the data side is measured by: multi-crop loaders per backend (``pipeline``),
conversion (``convert``), the DALI host feed (``feed``), the photometric finish
(``photometric``), and short training runs fed by each loader (``e2e``)."""
