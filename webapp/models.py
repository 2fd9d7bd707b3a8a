"""No models: this module exists so that ``migrate`` sends this app its ``post_migrate`` signal
(Django sends it only to apps with a models module; see webapp.apps)."""
