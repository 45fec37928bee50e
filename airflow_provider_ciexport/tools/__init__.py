"""Tools that never run in a task: the sandbox, the Constant Contact authorization command, the demo.

Nothing an operator or a hook imports pulls these in.
"""
