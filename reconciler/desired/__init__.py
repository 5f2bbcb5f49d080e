"""Loading and validating desired-state files (YAML + JSON Schema) into ``model.Desired``.

Entry point: ``reconciler.desired.loader.load_paths`` (returns ``LoadedDesired``). The other
modules are its parts: ``yaml_nodes`` (safe YAML with positions), ``validation`` (the schema).
"""
