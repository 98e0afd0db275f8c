"""pyd's native exec driver (entry point ``pyd.exec: native``, hooks in ``.plugin``).

Kept empty on purpose: ``python -m pyd_exec_native.shim`` and ``.forkserver`` import this
package first, and they must start fast.
"""
