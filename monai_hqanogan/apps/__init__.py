"""Applications built on the toolkit: a MONAI Label app (``monai_hqanogan.apps.monailabel``, needs monailabel)."""
