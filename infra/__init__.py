"""Where lifecycle lives: settings, the warehouse schema and its migrations, deployments."""
