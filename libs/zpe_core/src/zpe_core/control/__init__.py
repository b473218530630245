"""Control-plane-only code: user API keys, compute servers and their enrollment, the
operations switches, per-owner limits and the pull coordinator. Workers never import it."""
