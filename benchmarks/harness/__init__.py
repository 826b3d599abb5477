"""What every benchmark shares: timing and machine description (``timing``), result files
(``report``), backends run in processes of their own with limits (``runs``), CUDA-graph
timing of short calls (``graph_timing``), and the data measured on (``corpus`` +
``corpus_images``: the ImageNet-like corpus; ``folder_stats``; ``bench_data``: which data a
run uses)."""
