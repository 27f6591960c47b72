"""The benchmark harness behind ``decoupled bench`` (see :mod:`decoupled.bench.run`).

* :mod:`.layouts`: the parameter shapes timed (one tensor; GPT-2's 148 tensors at any size);
* :mod:`.bandwidth`: the machine's copy and triad bandwidth, measured in the same run;
* :mod:`.peers`: every ``decoupled`` backend and the peers (torch, optimi, bitsandbytes, torchao);
* :mod:`.timing`: one step timed as the median of many, contenders interleaved;
* :mod:`.report`: ratios, table, JSON, Markdown, plot; :mod:`.machine`: what it ran on.
"""
