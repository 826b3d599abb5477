"""The GPU check for a lent GPU: its parts (``check``), how they are cut into device calls
that fit one window (``plan``), the machine and kernel-library report (``env``), and
compute-sanitizer over the kernels (``sanitize``)."""
