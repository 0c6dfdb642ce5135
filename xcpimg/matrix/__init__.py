"""The build-and-boot matrix as tests that ship with xcpimg.

Run them from anywhere with ``pytest --pyargs xcpimg.matrix`` (the options, markers
and xdist sharing come from the xcpimg pytest plugin), or with ``xcpimg test``,
which adds ``-n auto`` and prints a result table. The checkout's own test suite
collects them from here too.
"""
