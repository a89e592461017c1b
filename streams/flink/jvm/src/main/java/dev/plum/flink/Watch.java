package dev.plum.flink;

/**
 * An accepted watch as the timeline keeps it (streams/flink/timeline.py's watch tuple). Also
 * the element type of the PTF's pending-watches state, hence public fields and a no-argument
 * constructor (a Flink structured type).
 */
public class Watch {
  public long ts;
  public String eventId;
  public String videoId;
  public double watchTimeS;
  public double videoDurationS;
  public boolean clicked;
  public String contextVideoId; // null: none
  public Double satisfaction; // null: no survey answer

  public Watch() {}

  public Watch(
      long ts,
      String eventId,
      String videoId,
      double watchTimeS,
      double videoDurationS,
      boolean clicked,
      String contextVideoId,
      Double satisfaction) {
    this.ts = ts;
    this.eventId = eventId;
    this.videoId = videoId;
    this.watchTimeS = watchTimeS;
    this.videoDurationS = videoDurationS;
    this.clicked = clicked;
    this.contextVideoId = contextVideoId;
    this.satisfaction = satisfaction;
  }
}
