"""The ``atomscale-lab`` admin command (:mod:`.main`) and the commands other packages add to it."""
