# A package, so that this folder's conftest.py imports as ``generation.conftest``. Without it
# pytest imports every conftest.py outside a package under the one module name ``conftest``,
# replacing the root conftest in sys.modules, and ``from conftest import needs_realdata`` in the
# test files of this and later folders fails.
