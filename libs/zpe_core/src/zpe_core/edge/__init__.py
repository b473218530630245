"""Guards at the HTTP edge shared by the API and the push worker: bearer-token
primitives, the Host check, the request-body cap, Google ID tokens and IAP identity."""
