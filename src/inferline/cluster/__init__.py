"""inferline on Ray Serve: each local model a deployment of engine replicas, the gateway
the ingress deployment, replicas chosen by queued tokens, free KV blocks and prefix-cache
locality (`routing.PrefixAwareRouter`), scaled on queued prompt tokens (`autoscaling`).

Ray is imported only here and only when a cluster is used (``serve --ray``)."""
