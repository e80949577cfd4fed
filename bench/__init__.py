"""The benchmark harness of issue #14: the gateway beside direct Keycloak and its reference apps (`make bench`)."""
