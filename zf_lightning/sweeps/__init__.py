"""What reads many jobs of a sweep: reports, tables and pictures."""
