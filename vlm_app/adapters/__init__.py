"""Model families behind one interface: see `base.Adapter`; names and families in `registry`."""
