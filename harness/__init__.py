"""What tests and benchmarks share to run Darkroom as processes and look at them.

Starting commands and waiting for them (``launch``), the environment the services start in
(``environment``), ``darkroom up`` with its children (``up``), what ``/proc`` says of a process
(``proc``), Prometheus text (``metrics``), test images (``images``) and the chaos run (``chaos``).

It imports no darkroom code on purpose: ``bench/run.py --services DIR`` benchmarks another copy
of it, which the children run while this harness measures. Tests (pytest's ``pythonpath``) and
``bench/`` (its ``sys.path`` setup) import it from the repository root; it is not in the wheel.
"""
