"""The namespace lab (`sudo make lab`): a described topology (topology.py), a builder that makes
and removes it with pyroute2 (build.py), a way to run a command inside a namespace (nsexec.py),
how a unit is started in it (unit.py), and the run that pushes traffic through it (run.py).
"""
