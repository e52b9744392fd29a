"""The plugin's magicgui/Qt widgets: the only modules that import Qt."""
