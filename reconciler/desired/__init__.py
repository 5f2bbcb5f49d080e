"""Loading and validating desired-state files (YAML + JSON Schema) into ``model.Desired``."""
