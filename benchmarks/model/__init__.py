"""What the model side is measured by: train-step throughput against patch size (``patch``),
our step against the reference recipe's (``step``; both built by ``trainstep``), the DINO
loss (``loss``, its calls ``loss_calls`` and its bytes model ``loss_model``), and FLOP counts
and MFU (``flops``)."""
