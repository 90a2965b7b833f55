"""The cluster as the agent holds it: every decoded etcd value by key, kept consistent."""
