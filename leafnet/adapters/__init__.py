"""The few places leafnet relies on another library's private API, one module per library.

Each holds what the library offers no public way to do, under a public name of leafnet's;
tests/test_adapters.py fails when a library renames or reshapes one of them.
"""
