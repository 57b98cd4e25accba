"""icow's benchmark suite: icow side by side with its compute and transport floors.

Run ``python -m bench --help``; see bench/README.md for the method.
"""
