"""Pictures and panels for people: charts, the tearsheet, the widget panel."""
