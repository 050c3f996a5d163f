"""The reviewers' web page: worklist, case view with image and heatmap, decisions, admin statistics."""
