"""Lab definition: models, loading, graph, writer and the analysis API."""
