"""The web app (`python -m vlm_app ui`): Chat and Compare tabs over the public adapter API."""
