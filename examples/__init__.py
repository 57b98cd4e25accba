"""The bundled example model repository (models/) and client examples."""
