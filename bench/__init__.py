"""The benchmark harness of issues #14 and #21: the gateway beside direct Keycloak and its reference apps
(`make bench`), and where its CPU goes (`make profile`)."""
