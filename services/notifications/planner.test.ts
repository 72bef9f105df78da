import { describe, expect, it } from "vitest";
import { afterQuietHours, digestDue, isTimeZone, localMinute } from "./planner.js";

describe("quiet hours and digest windows", () => {
  const paris = { start_minute: 22 * 60, end_minute: 7 * 60, time_zone: "Europe/Paris" };

  it("reads the local time in the user's zone", () => {
    // 21:30 UTC in December is 22:30 in Paris (UTC+1).
    expect(localMinute(new Date("2026-12-03T21:30:00Z"), "Europe/Paris")).toBe(22 * 60 + 30);
    expect(isTimeZone("Europe/Paris")).toBe(true);
    expect(isTimeZone("Mars/Olympus")).toBe(false);
  });

  it("holds a message sent inside quiet hours (across midnight) until they end, local time", () => {
    const at = new Date("2026-12-03T21:30:00Z"); // 22:30 in Paris
    expect(afterQuietHours(at, paris).toISOString()).toBe("2026-12-04T06:00:00.000Z"); // 07:00 in Paris
    const morning = new Date("2026-12-04T05:15:00Z"); // 06:15 in Paris
    expect(afterQuietHours(morning, paris).toISOString()).toBe("2026-12-04T06:00:00.000Z");
  });

  it("sends at once outside quiet hours, or without any", () => {
    const noon = new Date("2026-12-03T11:00:00Z");
    expect(afterQuietHours(noon, paris)).toBe(noon);
    expect(afterQuietHours(noon, undefined)).toBe(noon);
    expect(afterQuietHours(noon, { ...paris, end_minute: paris.start_minute })).toBe(noon);
  });

  it("closes hourly digests at the next full hour and daily ones at 08:00 local", () => {
    const at = new Date("2026-12-03T10:20:30Z");
    expect(digestDue(at, "hourly", undefined).toISOString()).toBe("2026-12-03T11:00:00.000Z");
    expect(digestDue(at, "daily", undefined).toISOString()).toBe("2026-12-04T08:00:00.000Z");
    expect(digestDue(at, "daily", paris).toISOString()).toBe("2026-12-04T07:00:00.000Z");
    const early = new Date("2026-12-03T05:00:00Z"); // 06:00 in Paris: today's 08:00 is still ahead
    expect(digestDue(early, "daily", paris).toISOString()).toBe("2026-12-03T07:00:00.000Z");
  });
});
