"""Everything that touches the node's host: the subprocess runner and the backends that vary by host."""
