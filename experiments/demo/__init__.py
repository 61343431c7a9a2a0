"""``ldvce demo``: the whole pipeline on the offline toy world (settings:
``configs/experiment/demo.yaml``). :mod:`.run` chains the steps, :mod:`.scoring` scores them
(accuracy, relevance mass, the simulated study), :mod:`.report` writes the HTML page."""
